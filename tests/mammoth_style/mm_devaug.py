# Mammoth-style replay that augments on the device with self.transform and uses the backbone's returnt.
import torch
import torch.nn.functional as F

from models.utils.continual_model import ContinualModel
from utils.args import add_rehearsal_args, ArgumentParser
from utils.buffer import Buffer
from utils.conf import get_device


class MmDevAug(ContinualModel):
    NAME = 'mm_devaug'
    COMPATIBILITY = ['class-il', 'task-il']

    @staticmethod
    def get_parser(parser) -> ArgumentParser:
        add_rehearsal_args(parser)
        return parser

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset=dataset)
        self.buffer = Buffer(self.args.buffer_size)
        self.best_device = get_device()
        self.denorm = self.dataset.get_denormalization_transform()
        self.norm = self.dataset.get_normalization_transform()
        self.checks = {'shape_ok': 0, 'feat_ok': 0}

    def observe(self, inputs, labels, not_aug_inputs, epoch=None):
        augmented = self.transform(not_aug_inputs)  # kornia pipeline on the device
        assert augmented.shape == inputs.shape and augmented.device == inputs.device
        self.checks['shape_ok'] += 1
        self.opt.zero_grad()
        all_inputs, all_labels = torch.cat([inputs, augmented]), torch.cat([labels, labels])
        if not self.buffer.is_empty():
            idx, buf_x, buf_y = self.buffer.get_data(self.args.minibatch_size, transform=self.transform,
                                                     device=self.device, return_index=True)
            all_inputs, all_labels = torch.cat([all_inputs, buf_x]), torch.cat([all_labels, buf_y])
        logits, feats = self.net(all_inputs, returnt='both')
        assert torch.allclose(self.net(all_inputs, returnt='features'), feats, atol=1e-5)
        self.checks['feat_ok'] += 1
        loss = F.cross_entropy(logits, all_labels)
        loss.backward()
        self.opt.step()
        self.buffer.add_data(examples=not_aug_inputs, labels=labels)
        return loss.item()
