"""Where a voice turn's time goes: the profiler, its reports and charts, and recorded input fed as live."""
