"""Package list only; all metadata lives in pyproject.toml.

The seqio registrations in the top-level `tasks/` folder install as `arch_compare_tasks`; its
fixture folders are data-only namespace packages so their files ship with it.
"""
from setuptools import find_namespace_packages, find_packages, setup

task_packages = ["arch_compare_tasks"] + [
    f"arch_compare_tasks.{name}"
    for name in find_namespace_packages(where="tasks", exclude=["*__pycache__*"])
]
setup(
    packages=find_packages(include=["arch_compare", "arch_compare.*"]) + task_packages,
    package_dir={"arch_compare_tasks": "tasks"},
    package_data={"arch_compare_tasks": ["README.md"],
                  "": ["*.json", "*.jsonl", "*.csv", "*.txt", "*.html", "*.css"]},
)
