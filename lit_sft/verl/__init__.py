"""verl compatibility: verl's SFT configurations (`schema`), its Hydra command line (`overrides`) and their
translation into native lit_sft configs (`translate`, `outputs`). The command is `lit_sft.commands.verl`."""
