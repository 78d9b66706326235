"""Joint training of an LLM and a domain recommender by deep mutual learning (paper §4.2-4.3).

    M = InformationSharingModule(...);  mutual_learning_loss(rows_u, rows_i, M, users, items)
    EnhancedDomainModel(domain, h)                 # Eq. 5-6: σ(wᵀ[f_D ; h_L] + b)
    metrics_llm, metrics_drs, run_dir = run_bdlm(params)   # Algorithm 1 end to end
"""
from .sharing import DomainProjection, InformationSharingModule, mutual_learning_loss
from .enhanced import EnhancedDomainModel
from .trainer import JointTrainer, domain_examples
from .cascade import make_cascade_score_fn
from .plots import plot_joint_history, history_frame
from .run import build_joint, pretrained_domain, run_bdlm, variant_name

__all__ = ["DomainProjection", "InformationSharingModule", "mutual_learning_loss",
           "EnhancedDomainModel", "JointTrainer", "domain_examples", "make_cascade_score_fn",
           "plot_joint_history", "history_frame", "build_joint", "pretrained_domain", "run_bdlm",
           "variant_name"]
