"""Write-side services of the compute app."""
