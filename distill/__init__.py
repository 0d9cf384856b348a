"""Producing models: fine-tune a teacher, distil a student, export to ONNX, build the demo pair."""

from distill.build import BuildOptions, distill_student, finetune_teacher
from distill.training import TrainSettings, distillation_loss, student_from_teacher_layers

__all__ = [
    "BuildOptions",
    "TrainSettings",
    "distill_student",
    "distillation_loss",
    "finetune_teacher",
    "student_from_teacher_layers",
]
