"""Scores that act: what happens around a score, as plain functions and the models of the rules file.

The flow is one way: event -> rule -> job -> platform -> history -> trigger -> firing -> action jobs.

- `changes`: a change to a tag, the fold of a history, a threshold crossed (pure);
- `rules`: the rules file, its models and its checks;
- `events`: events to jobs through their rules, and the event log;
- `history`: the durable subscriber that keeps every change, and reading it back;
- `triggers`: the durable subscriber that fires triggers, the re-arm rule (pure), and reading the firings.

The store keeps history, firings and the firings' action jobs in the transaction that marks the change of the
job that caused them applied.
"""
