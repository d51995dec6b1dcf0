"""The web workshop (`tunesmith ui`): a door over tunesmith.workshop, like cli/."""
