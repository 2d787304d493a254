"""roles/base alone on lab nodes (tests/lab/test_lab_health_support.py): among the rest,
chrony configured against the cluster's NTP servers, the lab gateway's server here.

    pyinfra -y inventory/lab.py tests/lab/base_deploy.py --limit gpu-001
"""

from kiln.roles.base import base

base()
