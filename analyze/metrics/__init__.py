"""Metrics: the workload's analytic FLOPs and bytes joined with attributed time (flops), the honest
limiter (efficiency), ranked opportunities, GPU peaks (peaks), kernel categories (categories)."""
