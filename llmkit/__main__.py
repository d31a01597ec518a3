from llmkit.cli import main

# Guarded: `llmkit serve` spawns the model's process, which imports this module again.
if __name__ == "__main__":
    main()
