"""Labs: a whole cluster from one file or a few calls (vaddr.Lab)."""
