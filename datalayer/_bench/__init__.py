"""``datalayer bench``: scenarios, peers, chart and the pool sweep; ``import datalayer`` never
loads them."""
