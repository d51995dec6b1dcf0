"""The planner: parameter counts, peak memory (CPU and GPU), training time and method advice
for a run config, before anything trains. `tunesmith plan CONFIG` prints it."""

from tunesmith.plan.planner import Plan, make_plan, plan_summary

__all__ = ["Plan", "make_plan", "plan_summary"]
