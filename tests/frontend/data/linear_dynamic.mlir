// Hand-written: y = relu(x @ W^T + b) * 2 with a dynamic batch dim, dense weights, and a
// second result (softmax over the last dim, as torch-mlir decomposes it).
module {
  func.func @main(%arg0: !torch.vtensor<[?,4],f32>) -> (!torch.vtensor<[?,3],f32>, !torch.vtensor<[?,3],f32>) {
    %w = torch.vtensor.literal(dense<[[1.0, 0.5, -1.0, 2.0], [0.0, 1.0, 1.0, -0.5], [-2.0, 0.25, 0.0, 1.0]]> : tensor<3x4xf32>) : !torch.vtensor<[3,4],f32>
    %b = torch.vtensor.literal(dense<[0.1, -0.2, 0.3]> : tensor<3xf32>) : !torch.vtensor<[3],f32>
    %int0 = torch.constant.int 0
    %int1 = torch.constant.int 1
    %int2 = torch.constant.int 2
    %int-1 = torch.constant.int -1
    %true = torch.constant.bool true
    %none = torch.constant.none
    %float1 = torch.constant.float 1.000000e+00
    %perm = torch.prim.ListConstruct %int1, %int0 : (!torch.int, !torch.int) -> !torch.list<int>
    %wt = torch.aten.permute %w, %perm : !torch.vtensor<[3,4],f32>, !torch.list<int> -> !torch.vtensor<[4,3],f32>
    %mm = torch.aten.mm %arg0, %wt : !torch.vtensor<[?,4],f32>, !torch.vtensor<[4,3],f32> -> !torch.vtensor<[?,3],f32>
    %y = torch.aten.add.Tensor %mm, %b, %int1 : !torch.vtensor<[?,3],f32>, !torch.vtensor<[3],f32>, !torch.int -> !torch.vtensor<[?,3],f32>
    %r = torch.aten.relu %y : !torch.vtensor<[?,3],f32> -> !torch.vtensor<[?,3],f32>
    %out = torch.aten.mul.Scalar %r, %int2 : !torch.vtensor<[?,3],f32>, !torch.int -> !torch.vtensor<[?,3],f32>
    %values, %indices = torch.aten.max.dim %y, %int-1, %true : !torch.vtensor<[?,3],f32>, !torch.int, !torch.bool -> !torch.vtensor<[?,1],f32>, !torch.vtensor<[?,1],si64>
    %sub = torch.aten.sub.Tensor %y, %values, %float1 : !torch.vtensor<[?,3],f32>, !torch.vtensor<[?,1],f32>, !torch.float -> !torch.vtensor<[?,3],f32>
    %exp = torch.aten.exp %sub : !torch.vtensor<[?,3],f32> -> !torch.vtensor<[?,3],f32>
    %dims = torch.prim.ListConstruct %int-1 : (!torch.int) -> !torch.list<int>
    %sum = torch.aten.sum.dim_IntList %exp, %dims, %true, %none : !torch.vtensor<[?,3],f32>, !torch.list<int>, !torch.bool, !torch.none -> !torch.vtensor<[?,1],f32>
    %sm = torch.aten.div.Tensor %exp, %sum : !torch.vtensor<[?,3],f32>, !torch.vtensor<[?,1],f32> -> !torch.vtensor<[?,3],f32>
    return %out, %sm : !torch.vtensor<[?,3],f32>, !torch.vtensor<[?,3],f32>
  }
}
