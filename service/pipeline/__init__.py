"""Recognition pipeline: axis mapping, recognizers, scan assembly and accounting, batching, inference."""
