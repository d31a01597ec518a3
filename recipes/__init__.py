"""The shipped recipes (YAML data, no code). This file makes `recipes/` the package
`llmkit.recipes` (see pyproject.toml), so a checkout and an installed wheel find them the same
way: `importlib.resources.files("llmkit.recipes")`."""
