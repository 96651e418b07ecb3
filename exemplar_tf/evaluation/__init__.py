"""Evaluation of exports: `savedmodel` (the one reader of exports), `probe` (the linear SVM probe), `protocols`
(STL-10 / CIFAR-10 / Caltech-101 / folder protocols beside the random baseline), `knn` (weighted kNN, the memory
bank from a checkpoint), `retrieval` (image retrieval pages). The programs are `exemplar_tf.evaluate`, `.knn`
and `.retrieve`."""
