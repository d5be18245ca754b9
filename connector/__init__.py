"""Everything that talks to an outside system: the marketing platforms, Dynamics 365, and their sandboxes."""
