"""After training: batched greedy generation and Hugging Face export."""
