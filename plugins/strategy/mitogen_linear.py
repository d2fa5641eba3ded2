"""The `linear` strategy run over Mitogen (ansible.cfg names it for every run).

Mitogen keeps one Python interpreter per host for the whole run and sends each
task to it, instead of copying a module and starting Python over SSH for every
task on every host; a second site.yml run on the lab goes from about 330 s to
about 110 s (bench/site_rerun.py). The package comes with the dev extra; its
strategy plugin lives in the installed package, whose path depends on the
virtualenv's Python, hence this one-line re-export at a fixed path.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
