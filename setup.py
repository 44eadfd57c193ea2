"""Only what pyproject.toml cannot say: the top-level ``dashboards/`` folder ships inside the wheel as the package
``ranksearch.dashboards``, so a plain (non-editable) install finds the report templates."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["ranksearch*"]), "ranksearch.dashboards"],
    package_dir={"ranksearch.dashboards": "dashboards"},
)
