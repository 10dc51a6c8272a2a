"""Training: `NegativeTeacherConfig`, `NegativeTeacherTrainer`, where the chosen and rejected sides come
from, the negative filters, offline preference datasets, and loss terms beside TRL's."""
