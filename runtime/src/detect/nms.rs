//! Non-maximum suppression, in the two forms facenet-pytorch's MTCNN uses.
//!
//! - [`nms_iou`]: torchvision's `nms` (after P-Net and R-Net). Boxes are `[x1, y1, x2, y2]` with
//!   area `(x2 - x1) * (y2 - y1)`; visiting boxes by descending score, a box is dropped when its
//!   intersection over union with a kept box exceeds the threshold. Kept indices come back in
//!   descending score order; equal scores keep their input order (a stable sort).
//! - [`nms_min`]: facenet-pytorch's numpy NMS with the "Min" overlap (after O-Net): pixel-inclusive
//!   areas `(x2 - x1 + 1) * (y2 - y1 + 1)` and intersection over the smaller area. It visits boxes
//!   from the end of an ascending argsort, so of equal scores the later box comes first (numpy's
//!   sort is stable for the few boxes O-Net keeps).
//!
//! All arithmetic is f32, as the reference computes it; the threshold is compared in f32.

/// Kept indices of `boxes` (`[x1, y1, x2, y2]`) after torchvision-style NMS at IoU `threshold`,
/// by descending score.
pub fn nms_iou(boxes: &[[f32; 4]], scores: &[f32], threshold: f32) -> Vec<usize> {
    debug_assert_eq!(boxes.len(), scores.len());
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // Stable: equal scores stay in input order.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let areas: Vec<f32> = boxes
        .iter()
        .map(|b| (b[2] - b[0]) * (b[3] - b[1]))
        .collect();
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let a = boxes[i];
        for &j in &order[rank + 1..] {
            if suppressed[j] {
                continue;
            }
            let b = boxes[j];
            let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
            let inter = w * h;
            let iou = inter / (areas[i] + areas[j] - inter);
            if iou > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Kept indices of `boxes` after facenet-pytorch's "Min" NMS at `threshold`, in the order they
/// were kept (descending score).
pub fn nms_min(boxes: &[[f32; 4]], scores: &[f32], threshold: f32) -> Vec<usize> {
    debug_assert_eq!(boxes.len(), scores.len());
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let areas: Vec<f32> = boxes
        .iter()
        .map(|b| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0))
        .collect();
    let mut keep = Vec::new();
    while let Some(i) = order.pop() {
        keep.push(i);
        let a = boxes[i];
        order.retain(|&j| {
            let b = boxes[j];
            let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
            let overlap = w * h / areas[i].min(areas[j]);
            overlap <= threshold
        });
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_keeps_the_best_of_each_cluster_in_score_order() {
        // torchvision 0.17.2: torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), 0.5)
        // -> [3, 2]
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [20.0, 20.0, 30.0, 30.0],
            [0.5, 0.0, 10.5, 10.0],
        ];
        let scores = [0.8, 0.7, 0.6, 0.9];
        assert_eq!(nms_iou(&boxes, &scores, 0.5), vec![3, 2]);
    }

    #[test]
    fn min_overlap_drops_a_box_inside_a_better_one() {
        // A big box around a better small one covers all of the small one: dropped at 0.7,
        // though their IoU is only 0.09. facenet-pytorch 2.6.0:
        // batched_nms_numpy(boxes, torch.tensor([0.9, 0.95]), torch.zeros(2), 0.7, "Min") -> [1];
        // torchvision.ops.nms(boxes, torch.tensor([0.9, 0.95]), 0.7) -> [1, 0]
        let boxes = [[0.0, 0.0, 99.0, 99.0], [10.0, 10.0, 39.0, 39.0]];
        assert_eq!(nms_min(&boxes, &[0.9, 0.95], 0.7), vec![1]);
        assert_eq!(nms_iou(&boxes, &[0.9, 0.95], 0.7), vec![1, 0]);
    }
}
