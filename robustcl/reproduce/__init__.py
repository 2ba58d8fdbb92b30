"""The reproduction grid and its record (bench/reproduce.py): does each seed method beat its
baseline at a scale that decides?

  settings    ReproduceConfig: cells, seeds, protocol flagfiles, evaluation, where runs and record go
  grid        every cell x seed trained and evaluated by the real scripts, resumable stage by stage
  record      the committed record (NAME.json, .rows.json, .md, plots) written from finished rows
  statistics  paired tests over the same points and seeds, and the verdicts
  flags       the grid's flags

It sits above robustcl.cli: it runs the scripts' commands and resolves their flags through the CLI.
"""
