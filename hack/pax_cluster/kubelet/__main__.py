import sys

from pax_cluster.kubelet.cli import main

sys.exit(main())
