"""The run config: defaults, fields by dotted name, and validation once into `Resolved`."""

from sgdlab.config import batch_schedule
from sgdlab.config.defaults import default_config
from sgdlab.config.fields import (LABEL_FIELDS, MEMBER_FIELDS, NON_RESULT_FIELDS, check_members,
                                  flatten, from_dict, result_fields, run_name, set_field,
                                  shared_fields, to_dict)
from sgdlab.config.resolve import Resolved, noise_groups_for, resolve
from sgdlab.errors import check_number

__all__ = ["LABEL_FIELDS", "batch_schedule", "MEMBER_FIELDS", "NON_RESULT_FIELDS", "Resolved", "check_members",
           "check_number", "default_config", "flatten", "from_dict", "noise_groups_for",
           "resolve", "result_fields", "run_name", "set_field", "shared_fields", "to_dict"]
