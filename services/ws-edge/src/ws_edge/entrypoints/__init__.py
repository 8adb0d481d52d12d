"""Transport: the /ws endpoint and the HTTP routes of the edge."""
