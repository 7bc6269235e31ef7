"""Sources: where events come from. Each source decodes input and hands it to Intake."""
