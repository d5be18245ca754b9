"""Scores that act: what happens around a score, as plain functions and the models of the rules file.

The flow is one way: event -> rule -> job -> platform -> history -> trigger -> firing -> action jobs. The pure
parts live here (`changes`: a change and the fold of a history; `crossings`: thresholds crossed and re-arm;
`rules`: the rules file); the store keeps history and firings in the transaction that marks the change of the job
that caused them applied.
"""
