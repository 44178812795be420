"""pda: compress BERT encoders with Pruning, Distillation and Adapters, and measure the cost."""

__version__ = "0.1.0"
