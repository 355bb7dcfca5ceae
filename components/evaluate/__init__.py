"""Evaluation stage: trie-constrained beam search (direct and thinking modes), item-level
HR/NDCG@K beside popularity and SASRec baselines, predictions and an HTML report."""
