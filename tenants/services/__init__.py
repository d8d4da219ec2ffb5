"""Write-side services of the tenants app, one module per concern."""
