"""The eval function: score every finished model type of a config hash, promote the winner."""
