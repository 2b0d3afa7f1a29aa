import torch

# One intra-op thread: the suite's networks are small, and two threads on two busy cores are
# many times slower than one.
torch.set_num_threads(1)
