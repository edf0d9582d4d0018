"""What MLflow's UI shows: version descriptions, contact sheets, stylize-run notes."""
