"""Developer tools that run against the package from a checkout: the benchmark harness
(``hack/bench``), the local cluster (``hack/cluster``) and the throwaway etcd they share. Tests may
import these; these never import tests."""
