"""Examples, batches, the one data module for every task (tokenise, collate, resumable loaders), tokenizers."""
