"""HTTP layer: protocol models, serving classes, thin routers, error mapping."""
