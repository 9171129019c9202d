"""Package list only; all metadata lives in pyproject.toml.

The seqio registrations in the top-level `tasks/` folder install as `arch_compare_tasks`.
"""
from setuptools import find_packages, setup

task_packages = ["arch_compare_tasks"] + [
    f"arch_compare_tasks.{name}" for name in find_packages(where="tasks")
]
setup(
    packages=find_packages(include=["arch_compare", "arch_compare.*"]) + task_packages,
    package_dir={"arch_compare_tasks": "tasks"},
    package_data={"arch_compare_tasks": ["fixtures/**/*"]},
)
