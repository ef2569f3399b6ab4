from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from .. import outbox
from .models import ExportJob
from .tasks import generate_csv_export


def own_job(request, pk) -> ExportJob:
    # Filtering by owner makes someone else's export a 404, not a 403: its
    # existence is none of their business either.
    return get_object_or_404(ExportJob, pk=pk, user=request.user)


@login_required
def export_list(request):
    jobs = ExportJob.objects.filter(user=request.user)[:20]
    return render(request, "exports/list.html", {"jobs": jobs})


# --8<-- [start:start-export]
@login_required
@require_POST
def start_export(request):
    with transaction.atomic():
        job = ExportJob.objects.create(user=request.user)
        outbox.send(generate_csv_export, job.pk)  # committed with the job, published after COMMIT
    return redirect("exports:detail", pk=job.pk)
    # --8<-- [end:start-export]


@login_required
def export_detail(request, pk):
    return render(request, "exports/detail.html", {"job": own_job(request, pk)})


# --8<-- [start:progress]
@login_required
def export_progress(request, pk):
    """What the progress bar polls: rows done of total, rate, ETA, download link."""
    job = own_job(request, pk)
    elapsed = ((job.finished_at or timezone.now()) - job.started_at).total_seconds() if job.started_at else 0
    rate = job.processed_rows / elapsed if elapsed > 0 else 0.0
    remaining = max((job.total_rows or 0) - job.processed_rows, 0)
    done = job.status == ExportJob.Status.COMPLETED
    return JsonResponse(
        {
            "status": job.status,
            "processed_rows": job.processed_rows,
            "total_rows": job.total_rows,
            "percent": 100.0 if done else round(job.progress * 100, 1),
            "rows_per_second": round(rate),
            "eta_seconds": 0 if done else (round(remaining / rate) if rate else None),
            "download_url": reverse("exports:download", args=[job.pk]) if done else None,
        }
    )
    # --8<-- [end:progress]


@login_required
def download_export(request, pk):
    job = own_job(request, pk)
    if job.status != ExportJob.Status.COMPLETED or not job.file:
        raise Http404("export not finished")
    # Streamed from whatever storage holds it (local disk, S3) through Django.
    return FileResponse(job.file.open("rb"), as_attachment=True, filename=f"transactions-{job.pk}.csv")
