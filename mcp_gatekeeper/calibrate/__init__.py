"""Calibrating the gates from evidence: shadow verdicts beside live calls, replay of a candidate policy over
recorded calls, and suggestions for the next rule (see the README, "Calibrate your gates").

``shadow`` (the shadow policy and its recorded verdict), ``history`` (what happened to a recorded call, in
calibration terms), ``replay`` (a candidate policy against recorded calls), ``envelope`` (argument predicates
derived from approved calls), ``rules_toml`` (a rule written as TOML), ``suggest`` (suggestions with evidence).
Nothing here changes a policy or a call: it reads the store and computes values.
"""
