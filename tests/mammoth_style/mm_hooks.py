# Mammoth-style model with an old-style get_parser() that overrides begin_task / end_task / end_eval
# and records what it sees.
import json

from models.utils.continual_model import ContinualModel
from utils import binary_to_boolean_type
from utils.args import add_experiment_args, add_management_args, ArgumentParser


class MmHooks(ContinualModel):
    NAME = 'mm_hooks'
    COMPATIBILITY = ['class-il', 'task-il']

    @staticmethod
    def get_parser() -> ArgumentParser:
        parser = ArgumentParser(description='Fine-tuning that logs its hooks.')
        add_management_args(parser)
        add_experiment_args(parser)
        parser.add_argument('--hooks_log', type=str, required=True)
        parser.add_argument('--freeze_head', type=binary_to_boolean_type, default=0)
        parser.add_argument('--interrupt_at_task', type=int, default=-1)
        return parser

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset=dataset)
        self.events = []
        self.steps = self.seen = self.labelled = self.noisy = 0

    def log(self, **event):
        self.events.append(event)
        with open(self.args.hooks_log, 'w') as f:
            json.dump(self.events, f)

    def begin_task(self, dataset):
        self.steps = self.seen = self.labelled = self.noisy = 0
        self.log(hook='begin_task', current_task=self.current_task, n_past=self.n_past_classes,
                 n_seen=self.n_seen_classes, n_cur=self.n_classes_current_task, cpt=self.cpt,
                 n_classes=self.N_CLASSES, num_classes=self.num_classes, n_tasks=self.n_tasks,
                 N_TASKS=self.N_TASKS, setting=self.SETTING, remaining=self.n_remaining_classes,
                 offsets=list(dataset.get_offsets()), freeze_head=bool(self.args.freeze_head))

    def end_task(self, dataset):
        self.log(hook='end_task', current_task=self.current_task, steps=self.steps,
                 task_iteration=self.task_iteration, lr=self.opt.param_groups[0]['lr'],
                 seen=self.seen, labelled=self.labelled, noisy=self.noisy)

    def end_eval(self, dataset, accs):
        self.log(hook='end_eval', current_task=self.current_task, n_accs=len(accs[0]))

    def future_forward(self, x):  # makes this a FutureModel for --eval_future
        return self.net(x)

    def observe(self, inputs, labels, not_aug_inputs, **kwargs):
        if self.current_task == self.args.interrupt_at_task and self.steps == 1:
            raise KeyboardInterrupt
        self.steps += 1
        self.seen += inputs.shape[0]
        self.labelled += int((labels >= 0).sum())
        if 'true_labels' in kwargs:
            self.noisy += int((kwargs['true_labels'] != labels).sum())
        self.opt.zero_grad()
        logits = self.net(inputs)
        loss = self.loss(logits[:, :self.n_seen_classes], labels)
        loss.backward()
        self.opt.step()
        return loss.item()
