"""Demonstration-only code that ships so that the experiments run from a clone: the drawn toy animals
(``experiment=animals_2d_toy``) and the digits' structure report (``structure.json``). The general library never
imports this package."""
