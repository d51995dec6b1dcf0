"""The continuous-improvement loop (seed 004 §3.6.4-3.6.5, Exercise 3.6): served logs and
feedback -> mined failures and error patterns (logs, mine, patterns, opportunities) -> targeted
data (targeted) -> retrain, validate, canary deploy, one cycle (retrain, validate, deploy,
cycle)."""
