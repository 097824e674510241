"""Command-line entry point: ``python main.py --model sgd --dataset seq-cifar10 --lr 0.03``."""
import sys

from app.runner import main

if __name__ == "__main__":
    sys.exit(main())
