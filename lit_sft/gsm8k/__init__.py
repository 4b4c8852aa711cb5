"""Everything GSM8K: answer scoring and its metric, evaluation by generation, the quickstart's synthetic
problems, and preparation of the real dataset in verl's formats."""
