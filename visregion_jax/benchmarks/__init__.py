"""The paper's benchmarks: reading their published files, prompting as LLaVA-1.5 does, and scoring as lmms-eval does."""
