"""The ``lit-sft`` subcommands; ``fit`` holds the LightningCLI and the console script."""
