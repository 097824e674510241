# Mammoth-style regulariser: quadratic pull towards the weights of the previous task.
import torch

from models.utils.continual_model import ContinualModel
from utils.args import ArgumentParser


class MmAnchor(ContinualModel):
    NAME = 'mm_anchor'
    COMPATIBILITY = ['class-il', 'domain-il', 'task-il']

    @staticmethod
    def get_parser(parser) -> ArgumentParser:
        parser.add_argument('--reg_weight', type=float, default=1.0)
        return parser

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset=dataset)
        self.anchor = None

    def end_task(self, dataset):
        self.anchor = self.net.get_params().data.clone()

    def observe(self, inputs, labels, not_aug_inputs):  # no epoch argument, as in many Mammoth models
        self.opt.zero_grad()
        outputs = self.net(inputs)
        penalty = self.reg_penalty_flat()
        loss = self.loss(outputs, labels) + self.args.reg_weight * penalty
        loss.backward()
        self.opt.step()
        return loss.item()

    def reg_penalty_flat(self):
        if self.anchor is None:
            return torch.tensor(0.0, device=self.device)
        flat = torch.cat([p.reshape(-1) for p in self.net.parameters()])
        return ((flat - self.anchor) ** 2).sum()
