"""The paper's benchmarks: their published files read locally, prompted and scored as the references do."""
