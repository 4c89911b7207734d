"""SAEBench-style evaluations, one module each: core, absorption, probing, scr, tpp, unlearning.

Nothing is imported here, so a DVC stage depends only on the eval module it runs."""
