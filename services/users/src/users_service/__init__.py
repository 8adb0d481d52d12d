"""The users service: creates users and tokens, lists users, answers user queries on the bus."""
